"""A pool's waiting line: bounded, first in first out, with a deadline.

A request that cannot be admitted now waits here instead of failing. Only
the head of the line checks for capacity, so admission stays in arrival
order; it is woken when a request of the pool ends (capacity freed) and
otherwise re-checks after the wait the refusing limit announced, polled at
least every ``POLL`` seconds so capacity freed elsewhere is noticed too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from modelpool.config.spec import QueuePolicy

POLL = 0.05


class QueueFull(Exception):
    """The line already holds ``max_waiting`` requests."""


class QueueTimeout(Exception):
    """The request waited ``timeout`` without being admitted."""


class WaitQueue:
    __slots__ = ("_line",)

    def __init__(self) -> None:
        self._line: deque[asyncio.Event] = deque()

    @property
    def depth(self) -> int:
        return len(self._line)

    def notify(self) -> None:
        """Capacity may have freed up: let the head of the line look."""
        if self._line:
            self._line[0].set()

    async def wait(self, policy: QueuePolicy, blocked: Callable[[], float | None]) -> None:
        """Return once ``blocked()`` says None (admissible) for this request at the head.

        ``blocked`` returns the seconds to wait before it is worth asking
        again. The caller must take the capacity right after, without
        awaiting, or the next in line may take it first.
        """
        if len(self._line) >= policy.max_waiting:
            raise QueueFull
        turn = asyncio.Event()
        self._line.append(turn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.timeout
        try:
            while True:
                wait = blocked() if self._line[0] is turn else POLL
                if wait is None:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise QueueTimeout
                turn.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.wait(), min(wait, POLL, remaining))
        finally:
            self._line.remove(turn)
            self.notify()
