"""What the integration tests share besides fixtures: config builders, the Daemon handle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml
from aiohttp import web
from fake_upstream import FakeUpstream

from modelpool.app import REGISTRY, RELOADER

API_KEY = "sk-test-integration-0123456789"

CAPABILITIES = ["chat", "completions", "embeddings", "stream", "tools", "vision", "json_mode"]
"""Everything the ingress endpoints need, so any test request may go to any model."""

FAST_TIMEOUTS = {"connect": "1s", "first_byte": "2s", "idle": "2s", "total": "10s"}
"""Short enough that a test stuck on an upstream fails fast, long enough for a busy CI."""


@dataclass
class Daemon:
    """The app under test, listening on ``url``, and a client session to call it."""

    app: web.Application
    url: str
    port: int
    http: aiohttp.ClientSession

    def in_flight(self) -> int:
        return sum(state.in_flight for state in self.app[REGISTRY].models())

    async def settled(self, within: float = 1.0) -> None:
        """Wait until no model has a request in flight (after a disconnect, say)."""
        for _ in range(int(within / 0.01)):
            if not self.in_flight():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.in_flight()} request(s) still in flight after {within}s")

    async def reload(self, config: dict[str, Any]) -> dict[str, Any]:
        """Write ``config`` over the file the daemon serves and reload it; the outcome."""
        path = Path(self.app[RELOADER].path)
        await asyncio.to_thread(path.write_text, yaml.safe_dump(config, sort_keys=False))
        async with self.http.post("/admin/reload") as response:
            outcome: dict[str, Any] = await response.json()
            return outcome


class StartDaemon(Protocol):
    """Serve ``config``; ``keepalive_timeout`` defaults to the daemon's own."""

    def __call__(
        self, config: dict[str, Any], *, keepalive_timeout: float = ...
    ) -> Awaitable[Daemon]: ...


StartFake = Callable[[], Awaitable[FakeUpstream]]


def provider(base_url: str, type_: str = "openai", **extra: Any) -> dict[str, Any]:
    """A provider block; OpenAI-style ones get a test key unless ``api_key=None``."""
    block: dict[str, Any] = {"type": type_, "base_url": base_url, "timeouts": FAST_TIMEOUTS}
    key = extra.pop("api_key", API_KEY)
    if key is not None:
        block["api_key"] = key
    block.update(extra)
    return block


def single_pool_config(base_url: str, **provider_extra: Any) -> dict[str, Any]:
    """One provider, one model ``m`` (upstream name ``up-m``), one pool ``p``."""
    return {
        "version": 1,
        "providers": {"up": provider(base_url, **provider_extra)},
        "models": {"m": {"provider": "up", "upstream_model": "up-m", "capabilities": CAPABILITIES}},
        "pools": {"p": {"members": ["m"]}},
    }


def chain_config(
    base_urls: Sequence[str], *, attempts: int = 3, timeouts: dict[str, str] | None = None
) -> dict[str, Any]:
    """Pool ``p`` of models ``m1..mN`` (upstream ``up-m1..``), one provider each, tried in order.

    The ``priority`` strategy with plain-string members makes each member its
    own tier in list order, so the try order is deterministic.
    """
    providers, models = {}, {}
    for i, url in enumerate(base_urls, start=1):
        providers[f"u{i}"] = provider(url, timeouts={**FAST_TIMEOUTS, **(timeouts or {})})
        models[f"m{i}"] = {
            "provider": f"u{i}",
            "upstream_model": f"up-m{i}",
            "capabilities": CAPABILITIES,
        }
    pool = {"strategy": "priority", "members": list(models), "retry": {"attempts": attempts}}
    return {"version": 1, "providers": providers, "models": models, "pools": {"p": pool}}


def chat(model: str = "p", **extra: Any) -> dict[str, Any]:
    """A minimal chat request body."""
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def read_sse(response: aiohttp.ClientResponse, within: float = 5.0) -> list[Event]:
    """Every SSE event of ``response`` with the monotonic time its last byte arrived."""
    events: list[Event] = []
    buffer = b""
    async with asyncio.timeout(within):
        async for chunk in response.content.iter_any():
            now = time.monotonic()
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                events.append(Event(now, event))
    assert not buffer.strip(), f"stream ended inside an event: {buffer!r}"
    return events


@dataclass(frozen=True)
class Event:
    at: float
    raw: bytes

    @property
    def data(self) -> bytes:
        return self.raw.removeprefix(b"data: ")


async def raw_request(
    port: int, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a request over a bare socket, so the test decides when the connection closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    fields = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    lines += [f"{name}: {value}" for name, value in fields.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    return reader, writer


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def observed(event: asyncio.Event, within: float = 1.0) -> None:
    """Wait for ``event``, failing the test if it is not set ``within`` seconds."""
    async with asyncio.timeout(within):
        await event.wait()
