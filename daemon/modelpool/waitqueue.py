"""A pool's waiting line: bounded, first in first out, with a deadline.

A request that cannot be admitted now waits here instead of failing. Only
the head of the line checks for capacity, so admission stays in arrival
order; it is woken when a request of the pool ends (capacity freed) and
otherwise re-checks after the wait the refusing limit announced, polled at
least every ``POLL`` seconds so capacity freed elsewhere is noticed too.
A newcomer asks :meth:`WaitQueue.barred` before taking capacity: when the
head could be admitted now (it was woken but has not run yet), the capacity
is the head's and the newcomer queues behind it.

Admissions are a chain (each head, leaving, wakes the next), so a hand-off
must be cheap: a waiter sleeps on a bare future with a timer, which one
loop iteration resumes. (``asyncio.wait_for`` on an Event costs a task and
about three iterations per wake-up on Python 3.11; under overload that
capped a binding rpm of 100/s at ~80 admissions per second.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from modelpool.config.spec import QueuePolicy

POLL = 0.05


class QueueFull(Exception):
    """The line already holds ``max_waiting`` requests."""


class QueueTimeout(Exception):
    """The request waited ``timeout`` without being admitted."""


class _Waiter:
    __slots__ = ("blocked", "wake")

    def __init__(self, blocked: Callable[[], float | None]) -> None:
        self.blocked = blocked
        self.wake: asyncio.Future[None] | None = None
        """Resolved to wake the waiter (capacity may have freed, or its turn came)."""


def _wake(wake: asyncio.Future[None] | None) -> None:
    if wake is not None and not wake.done():
        wake.set_result(None)


class WaitQueue:
    __slots__ = ("_line",)

    def __init__(self) -> None:
        self._line: deque[_Waiter] = deque()

    @property
    def depth(self) -> int:
        return len(self._line)

    def notify(self) -> None:
        """Capacity may have freed up: let the head of the line look."""
        if self._line:
            _wake(self._line[0].wake)

    def barred(self) -> bool:
        """Whether a newcomer must queue: the head of the line could be admitted now.

        Then the capacity is the head's (woken, it just has not run yet), and
        it is woken in case nobody did. A head still blocked (say, by its
        client's own limit) does not hold up a newcomer that can go.
        """
        if not self._line or self._line[0].blocked() is not None:
            return False
        self.notify()
        return True

    async def wait(self, policy: QueuePolicy, blocked: Callable[[], float | None]) -> None:
        """Return once ``blocked()`` says None (admissible) for this request at the head.

        ``blocked`` returns the seconds to wait before it is worth asking
        again. The caller must take the capacity right after, without
        awaiting, or the next in line may take it first.
        """
        if len(self._line) >= policy.max_waiting:
            raise QueueFull
        waiter = _Waiter(blocked)
        self._line.append(waiter)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.timeout
        try:
            while True:
                head = self._line[0] is waiter
                wait = blocked() if head else None
                if head and wait is None:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise QueueTimeout
                # The head looks again after the wait its limit announced (at most POLL);
                # the others sleep to their deadline: the head leaving wakes the next.
                sleep = remaining if wait is None else min(wait, POLL, remaining)
                wake = waiter.wake = loop.create_future()
                timer = loop.call_later(sleep, _wake, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
        finally:
            self._line.remove(waiter)
            self.notify()
