"""Graceful shutdown: stop taking requests, let the ones in flight finish, then cut.

On the first SIGTERM the daemon starts *draining*: ``/readyz`` turns false,
new proxy requests get 503 with ``Retry-After`` (in the API they called),
and requests already in flight — long streams included — carry on. When the
last one ends, or the grace period is over, or a second SIGTERM arrives, the
rest are *cut*: their handlers are cancelled, and a stream already under way
ends with an error event in its API rather than just stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from modelpool.errors import ShuttingDown

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RETRY_AFTER = 1.0
"""What a refused request is told to wait: another sidecar (or this one, restarted)."""


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.cutting = False
        self._handlers: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._handlers)

    def enter(self) -> asyncio.Task[object]:
        """Count the current handler as in flight until ``leave``; refused while draining."""
        if self.draining:
            raise ShuttingDown("modelpool is shutting down; retry", retry_after=RETRY_AFTER)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self._handlers.discard(task)
        if not self._handlers:
            self._idle.set()

    def start(self) -> None:
        self.draining = True
        if not self._handlers:
            self._idle.set()

    async def finish(self, grace: float, interrupt: asyncio.Event) -> bool:
        """Wait for the in-flight requests, at most ``grace`` seconds or until
        ``interrupt``; True when they all finished by themselves."""
        idle = asyncio.ensure_future(self._idle.wait())
        interrupted = asyncio.ensure_future(interrupt.wait())
        try:
            await asyncio.wait({idle, interrupted}, timeout=grace, return_when="FIRST_COMPLETED")
        finally:
            interrupted.cancel()
            idle.cancel()
        return not self._handlers

    async def cut(self, within: float = 5.0) -> None:
        """Cancel every handler still running and wait (bounded) for them to end."""
        self.cutting = True
        for task in list(self._handlers):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)


def is_proxied(request: web.Request) -> bool:
    return request.path.startswith("/v1/") and request.method == "POST"


def drain_middleware(drain: Drain) -> Handler:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_proxied(request):
            return await handler(request)
        task = drain.enter()  # not a context manager: this runs for every request
        try:
            return await handler(request)
        finally:
            drain.leave(task)

    return middleware  # type: ignore[return-value]


def cut_short(drain: Drain) -> bool:
    """Inside a handler that caught CancelledError: whether the cut caused it (and so the
    handler should end its response properly) rather than the client going away."""
    task = asyncio.current_task()
    if drain.cutting and task is not None:
        task.uncancel()
        return True
    return False
