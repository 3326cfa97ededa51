"""The one connection to Redis, and whether it is up.

Every call is bounded by ``shared_state.timeout``: a slow Redis is a down
Redis, never a hung request. The first failure marks the link down (logged
once, the ``modelpool_shared_state_up`` gauge goes to 0) and the callers
fall back as configured; a background task pings every ``sync_interval``
and marks it up again when Redis answers, then runs what asked to hear of it
(the budgets re-sync their meters).

A pooled connection to a Redis that restarted is dead, and fails the first
command sent on it: each command that fails to *connect or talk* (a
ConnectionError, never a timeout) is retried once on a fresh connection, so
a restarted Redis costs no request a spurious failure. (A script whose
reply was lost as the connection dropped may so run twice: a gate or a
budget then counts a request twice, erring on the side of refusing.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from modelpool.config.spec import SharedStateSpec
from modelpool.errors import SharedStateUnavailable

log = logging.getLogger("modelpool.shared")

T = TypeVar("T")


DOWN_AFTER = 3
MAX_CONNECTIONS = 32
"""Connections to Redis per sidecar: one round trip per request needs few."""


class SharedDown(Exception):
    """Redis did not answer in time, or answered with an error."""


def where(url: str) -> str:
    """host:port/db of a Redis URL, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


class RedisLink:
    def __init__(self, spec: SharedStateSpec) -> None:
        assert spec.redis is not None
        self.spec = spec
        self.prefix = spec.prefix
        self.where = where(spec.redis.reveal())
        pool = aioredis.BlockingConnectionPool.from_url(
            spec.redis.reveal(),
            max_connections=MAX_CONNECTIONS,
            timeout=spec.timeout,  # a full pool waits this long, then counts as Redis slow
            socket_timeout=spec.timeout,
            socket_connect_timeout=spec.timeout,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._client = aioredis.Redis(connection_pool=pool)
        self.up = True
        self._failures = 0
        """Failed calls in a row: one slow reply under load is not an outage."""
        self._scripts: dict[str, Any] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._on_up: list[Callable[[], Awaitable[None]]] = []

    @property
    def fail_open(self) -> bool:
        return self.spec.on_failure == "fail_open"

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *(p.replace("%", "%25").replace(":", "%3A") for p in parts)))

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run one Redis operation within the timeout; SharedDown when it fails."""
        try:
            async with asyncio.timeout(self.spec.timeout * 2):
                result = await operation(self._client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise SharedDown(str(exc)) from None
        self._failures = 0
        if not self.up:
            self.up = True
            log.info("shared state is back", extra={"redis": self.where})
            for callback in self._on_up:
                self.spawn(callback())
        return result

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` (in the background) each time Redis is found back after an outage."""
        self._on_up.append(callback)

    async def script(self, lua: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        registered = self._scripts.get(lua)
        if registered is None:
            registered = self._scripts[lua] = self._client.register_script(lua)
        return await self.call(lambda _: registered(keys=list(keys), args=list(args)))

    async def set(self, key: str, value: str, px: int) -> None:
        await self.call(lambda client: client.set(key, value, px=px))

    async def mget(self, keys: Sequence[str]) -> list[Any]:
        values: list[Any] = await self.call(lambda client: client.mget(keys))
        return values

    def soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at the end of this event-loop turn (to batch work in it)."""
        asyncio.get_running_loop().call_soon(callback)

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        """Fire and forget (a settlement): failures are already logged by ``call``."""

        async def run() -> None:
            with contextlib.suppress(SharedDown):
                await coroutine

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def unavailable(self) -> SharedStateUnavailable:
        message = "shared state (Redis) is unavailable and this daemon fails closed; retry"
        return SharedStateUnavailable(message, retry_after=max(1.0, self.spec.sync_interval))

    async def watch(self, stop: asyncio.Event) -> None:
        """While down, ping every sync_interval until Redis answers again."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.spec.sync_interval)
            await self.watch_once()

    async def watch_once(self) -> None:
        """If down, ping once: Redis answering marks the link up again."""
        if not self.up:
            with contextlib.suppress(SharedDown):
                await self.call(lambda client: client.ping())

    async def aclose(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        await self._client.aclose()

    def _failed(self, exc: BaseException) -> None:
        """Down after DOWN_AFTER failures in a row: one late reply (a saturated event loop)
        is not an outage. Each failed call falls back on its own meanwhile."""
        self._failures += 1
        if self._failures < DOWN_AFTER:
            return
        if self.up:
            self.up = False
            mode = self.spec.on_failure
            log.warning(
                "shared state is down",
                extra={"redis": self.where, "mode": mode, "error": type(exc).__name__},
            )
