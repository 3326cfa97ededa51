"""Upstream cooldowns shared between sidecars.

When an upstream answers one sidecar with 429 (or 503/529) and a Retry-After,
that sidecar's breaker for the model cools for that long. Every
``sync_interval`` each sidecar publishes the cooldowns it holds (as the wall
time they end, in a key that expires then) and reads everyone else's for the
models it serves, cooling its own breakers to match: the other sidecars stop
sending to that model within about two intervals, without counting a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from modelpool.breaker import State
from modelpool.shared.gates import scope_key
from modelpool.shared.link import RedisLink, SharedDown
from modelpool.table import Model, RoutingTable

MIN_COOL = 0.2
"""Cooldowns shorter than this are not worth telling the others about."""


def _key(link: RedisLink, model: Model) -> str:
    return link.key("cool", scope_key(model.identity.scope))


class CooldownSync:
    def __init__(self, link: RedisLink, table: Callable[[], RoutingTable]) -> None:
        self._link = link
        self._table = table
        self._published: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._link.spec.sync_interval)
            if self._link.up:
                with contextlib.suppress(SharedDown):
                    await self.sync_once()

    async def sync_once(self) -> None:
        models = list(self._table().models.values())
        now = time.time()
        await self._publish(models, now)
        keys = [_key(self._link, model) for model in models]
        if not keys:
            return
        values = await self._link.mget(keys)
        for model, value in zip(models, values, strict=True):
            if value is None:
                continue
            seconds = float(value) - time.time()
            if seconds > MIN_COOL:
                model.state.breaker.cool("the upstream asked another sidecar to wait", seconds)

    async def _publish(self, models: list[Model], now: float) -> None:
        for model in models:
            breaker = model.state.breaker
            if breaker.state is not State.OPEN or not breaker.rate_limited:
                continue
            seconds = breaker.retry_in()
            until = now + seconds
            key = _key(self._link, model)
            if seconds < MIN_COOL or until <= self._published.get(key, 0.0) + MIN_COOL:
                continue
            await self._link.set(key, repr(until), int(seconds * 1000))
            self._published[key] = until
