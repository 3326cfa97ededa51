"""Everything a sidecar shares through Redis, assembled in one place for the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelpool.clock import Clock
from modelpool.config.spec import SharedStateSpec
from modelpool.shared.budgets import SharedBudgetBook
from modelpool.shared.cooldowns import CooldownSync
from modelpool.shared.gates import SharedGates
from modelpool.shared.link import RedisLink
from modelpool.table import RoutingTable
from modelpool.usage.store import UsageStore


class SharedState:
    def __init__(self, spec: SharedStateSpec, clock: Clock) -> None:
        self.link = RedisLink(spec)
        self.gates = SharedGates(self.link, clock)

    @classmethod
    def of(cls, spec: SharedStateSpec, clock: Clock) -> SharedState | None:
        return cls(spec, clock) if spec.enabled else None

    def book(self, store: UsageStore | None) -> SharedBudgetBook:
        return SharedBudgetBook(self.link, store)

    def status(self) -> dict[str, Any]:
        """For /admin/status: where, whether it answers, and what this sidecar does now."""
        spec = self.link.spec
        if self.link.up:
            mode = "shared"
        elif self.link.fail_open:
            mode = f"fail_open: local limits and budgets at 1/{spec.replicas} each"
        else:
            mode = "fail_closed: requests needing shared limits or budgets get 503"
        return {"backend": "redis", "redis": self.link.where, "up": self.link.up, "mode": mode}

    @contextlib.asynccontextmanager
    async def running(self, table: Callable[[], RoutingTable]) -> AsyncIterator[None]:
        """The link's recovery pings and the cooldown sync, for the daemon's lifetime."""
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self.link.watch(stop)),
            asyncio.create_task(CooldownSync(self.link, table).run(stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 2.0)
            await self.link.aclose()
