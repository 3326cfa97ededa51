"""The waiting line: first in first out, bounded, with a deadline, woken when capacity frees."""

from __future__ import annotations

import asyncio

import pytest

from modelpool.config.spec import QueuePolicy
from modelpool.waitqueue import QueueFull, QueueTimeout, WaitQueue


async def test_admits_in_arrival_order_as_capacity_frees() -> None:
    queue = WaitQueue()
    free = [0]
    admitted: list[int] = []

    def blocked() -> float | None:
        return None if free[0] > 0 else 1.0

    async def client(i: int) -> None:
        await queue.wait(QueuePolicy(max_waiting=10, timeout=5), blocked)
        free[0] -= 1
        admitted.append(i)

    tasks = [asyncio.create_task(client(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    for _ in range(5):
        free[0] += 1
        queue.notify()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert admitted == [0, 1, 2, 3, 4]


async def test_a_full_line_refuses_at_once() -> None:
    queue = WaitQueue()
    policy = QueuePolicy(max_waiting=1, timeout=5)
    waiting = asyncio.create_task(queue.wait(policy, lambda: 1.0))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await queue.wait(policy, lambda: 1.0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue.depth == 0


async def test_waiting_ends_at_the_deadline_never_hangs() -> None:
    queue = WaitQueue()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QueueTimeout):
        await queue.wait(QueuePolicy(max_waiting=5, timeout=0.2), lambda: 10.0)
    assert 0.19 <= loop.time() - started < 0.5
    assert queue.depth == 0


async def test_no_wait_when_admissible() -> None:
    queue = WaitQueue()
    await queue.wait(QueuePolicy(max_waiting=1, timeout=1), lambda: None)
    assert queue.depth == 0
