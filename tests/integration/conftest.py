"""Fixtures: fake upstreams, and the real app served on 127.0.0.1 in-process.

The daemon under test is ``build_app(load_config(path))`` served by the runner
``modelpool run`` uses (``proxy_runner``), so a client that disconnects cancels
its handler here too; a test may shorten its keep-alive timeout. Configs are
real YAML files written to ``tmp_path`` and loaded by the real loader.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from fake_upstream import FakeUpstream
from proxy_harness import Daemon, StartDaemon, StartFake, single_pool_config

from modelpool.app import KEEPALIVE_TIMEOUT, build_app, proxy_runner
from modelpool.config.load import load_config


@pytest.fixture
async def fake_factory() -> AsyncIterator[StartFake]:
    started: list[FakeUpstream] = []

    async def start() -> FakeUpstream:
        fake = await FakeUpstream().start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.close()


@pytest.fixture
async def fake(fake_factory: StartFake) -> FakeUpstream:
    return await fake_factory()


@pytest.fixture
async def fake2(fake_factory: StartFake) -> FakeUpstream:
    return await fake_factory()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[StartDaemon]:
    """Write a config dict as YAML, load it with the real loader, serve the app."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(
        config: dict[str, Any], *, keepalive_timeout: float = KEEPALIVE_TIMEOUT
    ) -> Daemon:
        path = tmp_path / f"pools-{len(cleanups)}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        loaded = load_config(path, env={})
        app = build_app(loaded)
        grace = loaded.server.grace_period
        runner = proxy_runner(app, grace_period=grace, keepalive_timeout=keepalive_timeout)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession(f"http://127.0.0.1:{port}")

        async def cleanup() -> None:
            await http.close()
            await runner.cleanup()

        cleanups.append(cleanup)
        return Daemon(app, f"http://127.0.0.1:{port}", port, http)

    yield start
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def daemon(start_daemon: StartDaemon, fake: FakeUpstream) -> Daemon:
    """The simplest setup: pool ``p`` → model ``m`` (``up-m``) on one openai provider."""
    return await start_daemon(single_pool_config(fake.base_url))
