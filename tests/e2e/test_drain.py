"""SIGTERM drains the real daemon: not ready at once, new requests 503, in-flight streams
finish, usage flushed, exit 0; a second SIGTERM or the grace period cuts what is left,
each stream ending with an error event in its own API."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2e_daemon import Daemon, DaemonFactory

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORDS = 24


def slow_config(directory: Path, *, words: int, grace: str = "30s") -> Path:
    reply = " ".join(f"w{i}" for i in range(words))
    path = directory / "slow.yaml"
    path.write_text(
        "version: 1\n"
        f"server: {{grace_period: {grace}}}\n"
        "providers:\n"
        f"  slow: {{type: mock, mock: {{chunk_delay: 100ms, reply: '{reply}'}}}}\n"
        "models:\n"
        "  slow-model: {provider: slow, price: {input_per_mtok: 1, output_per_mtok: 2}}\n"
        "pools:\n  slow: {members: [slow-model], queue: {max_waiting: 500}}\n"
        "usage: {store: usage.db, flush_interval: 30s}\n"
    )
    return path


CHAT = {"model": "slow", "messages": [{"role": "user", "content": "drain"}], "stream": True}
MESSAGE = {"model": "slow", "max_tokens": 500, "stream": True,
           "messages": [{"role": "user", "content": "drain"}]}  # fmt: skip


async def stream(
    http: aiohttp.ClientSession, path: str, body: dict[str, Any], started: asyncio.Event
) -> bytes:
    async with http.post(path, json=body) as response:
        assert response.status == 200
        received = b""
        async for chunk in response.content.iter_any():
            received += chunk
            started.set()
        return received


async def start_streams(
    http: aiohttp.ClientSession, count: int, path: str = "/v1/chat/completions"
) -> list[asyncio.Task[bytes]]:
    body = MESSAGE if path == "/v1/messages" else CHAT
    events = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(stream(http, path, body, e)) for e in events]
    async with asyncio.timeout(10):
        await asyncio.gather(*(e.wait() for e in events))
    return tasks


def requests_on_disk(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT SUM(requests), SUM(errors), SUM(cancelled), SUM(output_tokens) "
            "FROM usage_buckets"
        ).fetchone()
    return dict(zip(("requests", "errors", "cancelled", "output_tokens"), row, strict=True))


def wait_exit(daemon: Daemon, within: float) -> int:
    code = daemon.process.wait(timeout=within)
    daemon.stopped = True
    return code


def test_fifty_streams_finish_while_new_requests_are_refused(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = daemon_factory(slow_config(tmp_path, words=WORDS))

    async def scenario() -> tuple[list[bytes], int, aiohttp.ClientResponse, Any]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(daemon.url, connector=connector) as http:
            tasks = await start_streams(http, 50)
            daemon.send(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with http.get("/readyz") as ready:
                ready_status = ready.status
            async with http.post("/v1/chat/completions", json=CHAT | {"stream": False}) as new:
                error = await new.json()
            return await asyncio.gather(*tasks), ready_status, new, error

    bodies, ready_status, new, error = asyncio.run(scenario())
    assert ready_status == 503
    assert new.status == 503
    assert int(new.headers["Retry-After"]) >= 1
    assert error["error"]["code"] == "shutting_down"
    expected = " ".join(f"w{i}" for i in range(WORDS))
    for body in bodies:
        assert body.endswith(b"data: [DONE]\n\n")
        text = b"".join(
            part.split(b'"content":"')[1].split(b'"')[0]
            for part in body.split(b"\n\n")
            if b'"content":"' in part
        )
        assert text.decode() == expected
    assert wait_exit(daemon, 15) == 0
    usage = requests_on_disk(tmp_path / "usage.db")
    assert (usage["requests"], usage["errors"], usage["cancelled"]) == (50, 0, 0)
    messages = [line["msg"] for line in daemon.log_lines()]
    assert "draining" in messages
    assert "cutting requests still in flight" not in messages


@pytest.mark.parametrize("how", ["second SIGTERM", "grace period"])
def test_what_is_left_is_cut_with_an_error_event_in_each_api(
    daemon_factory: DaemonFactory, tmp_path: Path, how: str
) -> None:
    grace = "30s" if how == "second SIGTERM" else "1s"
    daemon = daemon_factory(slow_config(tmp_path, words=300, grace=grace))

    async def scenario() -> list[bytes]:
        async with aiohttp.ClientSession(daemon.url) as http:
            tasks = await start_streams(http, 2)
            tasks += await start_streams(http, 2, "/v1/messages")
            daemon.send(signal.SIGTERM)
            if how == "second SIGTERM":
                await asyncio.sleep(0.3)
                daemon.process.send_signal(signal.SIGTERM)  # send() sends only once
            return await asyncio.gather(*tasks)

    began = time.monotonic()
    bodies = asyncio.run(scenario())
    assert time.monotonic() - began < 10  # 300 words at 100 ms would take 30 s
    for body in bodies[:2]:
        last = body.rstrip(b"\n").split(b"\n\n")[-1]
        assert last.startswith(b'data: {"error"'), last
        assert b"shutting down" in last
        assert b"[DONE]" not in body
    for body in bodies[2:]:
        last = body.rstrip(b"\n").split(b"\n\n")[-1]
        assert last.startswith(b"event: error\n"), last
        assert b"message_stop" not in body
    assert wait_exit(daemon, 15) == 0
    usage = requests_on_disk(tmp_path / "usage.db")
    assert (usage["requests"], usage["cancelled"]) == (4, 4)
    assert usage["output_tokens"] > 0  # charged for what was relayed
