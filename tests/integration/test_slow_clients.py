"""Slowloris: clients that trickle their request head, a byte at a time, are cut off
after the keep-alive timeout, and other clients are served meanwhile.

aiohttp's keep-alive timer starts when a connection is made and is not pushed back
by bytes that do not complete a request, so one timer bounds idle and trickling
connections alike. ``modelpool run`` uses ``app.KEEPALIVE_TIMEOUT`` (15 s); these
tests serve the same runner with a short one.
"""

from __future__ import annotations

import asyncio
import contextlib

from fake_upstream import FakeUpstream
from proxy_harness import Daemon, StartDaemon, chat, single_pool_config

from modelpool.app import KEEPALIVE_TIMEOUT

TIMEOUT = 0.5
"""The keep-alive timeout these tests serve with."""
TRICKLERS = 8
GAP = 0.02
"""Seconds between a trickling client's bytes."""
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nX-Padding: " + b"a" * 400 + b"\r\n\r\n"
)
"""A request head that takes longer to trickle (about 10 s) than any cut may take."""


class Trickler:
    """One connection sending ``HEAD`` a byte every ``GAP`` seconds until it is closed."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed_after: float | None = None
        """Seconds from connecting to seeing the daemon close the connection."""
        self.answer = b""

    async def run(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        began = loop.time()
        feeding = asyncio.create_task(self._feed(writer))
        try:
            self.answer = await asyncio.wait_for(reader.read(), TIMEOUT * 8)
            self.closed_after = loop.time() - began
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
            writer.close()

    async def _feed(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for byte in HEAD:  # bounded: the whole head would take len(HEAD) * GAP
                writer.write(bytes([byte]))
                await writer.drain()
                self.sent += 1
                await asyncio.sleep(GAP)


async def served(daemon: Daemon, count: int) -> list[int]:
    """Statuses of ``count`` ordinary chat requests, one after another."""
    statuses = []
    for _ in range(count):
        async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
            await response.read()
            statuses.append(response.status)
    return statuses


async def test_clients_trickling_a_request_head_are_cut_off_while_others_are_served(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    assert KEEPALIVE_TIMEOUT == 15.0  # the production default stays; only this test is short
    daemon = await start_daemon(single_pool_config(fake.base_url), keepalive_timeout=TIMEOUT)
    tricklers = [Trickler() for _ in range(TRICKLERS)]
    trickling = asyncio.gather(*(trickler.run(daemon.port) for trickler in tricklers))
    await asyncio.sleep(GAP * 5)  # every trickler has sent a few bytes
    assert await served(daemon, 5) == [200] * 5
    assert not trickling.done(), "served only once the tricklers were gone"
    await trickling
    for trickler in tricklers:
        assert trickler.answer == b""  # closed without an answer: no request was read
        assert trickler.closed_after is not None
        assert TIMEOUT * 0.9 <= trickler.closed_after < TIMEOUT * 4
        assert 0 < trickler.sent < len(HEAD)
    assert await served(daemon, 1) == [200]
    assert len(fake.requests) == 6  # nothing of a trickled head reached the upstream


async def test_a_connection_that_sends_nothing_is_closed_too(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(single_pool_config(fake.base_url), keepalive_timeout=TIMEOUT)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    began = loop.time()
    try:
        assert await asyncio.wait_for(reader.read(), TIMEOUT * 8) == b""
    finally:
        writer.close()
    assert TIMEOUT * 0.9 <= loop.time() - began < TIMEOUT * 4
