"""Pooled upstream connections: a full pool is a queue, never a connect failure."""

from __future__ import annotations

import asyncio
from typing import Any

from fake_upstream import FakeUpstream, Reply
from proxy_harness import StartDaemon, chain_config, chat, single_pool_config

CHAT = "/v1/chat/completions"


async def test_waiting_for_a_pooled_connection_does_not_eat_the_connect_timeout(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    """One connection, three requests each holding it 300ms, connect timeout 50ms.

    The later requests wait ~300-600ms for the connection; that wait must not
    count as connecting, so all three succeed on the first attempt.
    """
    fake.script(CHAT, *(Reply(delay=0.3) for _ in range(3)))
    timeouts = {"connect": "50ms", "first_byte": "2s", "idle": "2s", "total": "5s"}
    config = single_pool_config(fake.base_url, max_connections=1, timeouts=timeouts)
    daemon = await start_daemon(config)

    async def call() -> tuple[int, str]:
        async with daemon.http.post(CHAT, json=chat()) as response:
            await response.read()
            return response.status, response.headers.get("x-modelpool-attempts", "")

    results = await asyncio.gather(*(call() for _ in range(3)))
    assert results == [(200, "1")] * 3
    assert len(fake.requests) == 3


async def test_connections_are_kept_alive_and_reused(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(single_pool_config(fake.base_url))
    for _ in range(5):
        async with daemon.http.post(CHAT, json=chat()) as response:
            assert response.status == 200
            await response.read()
    peers: set[Any] = {r.peer for r in fake.requests}
    assert len(peers) == 1, f"expected one reused upstream connection, saw {peers}"


async def test_a_member_whose_pool_is_full_is_not_waited_on_while_another_can_serve(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    """A hung upstream holds its 2 connections; the other 8 requests go straight to m2."""
    fake.script(CHAT, *(Reply(delay=5) for _ in range(10)))
    config = chain_config([fake.base_url, fake2.base_url], timeouts={"first_byte": "1s"})
    config["providers"]["u1"]["max_connections"] = 2
    daemon = await start_daemon(config)

    async def call() -> tuple[int, str]:
        async with daemon.http.post(CHAT, json=chat()) as response:
            await response.read()
            return response.status, response.headers["x-modelpool-model"]

    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(*(call() for _ in range(10)))
    assert results == [(200, "m2")] * 10
    assert len(fake.requests) == 2, "requests queued behind a hung upstream's full pool"
    assert asyncio.get_running_loop().time() - started < 2.5
