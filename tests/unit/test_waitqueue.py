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


async def test_a_newcomer_is_barred_while_the_head_could_go() -> None:
    queue = WaitQueue()
    free = [0]
    assert not queue.barred()  # nobody waiting

    def blocked() -> float | None:
        return None if free[0] > 0 else 1.0

    head = asyncio.create_task(queue.wait(QueuePolicy(max_waiting=5, timeout=5), blocked))
    await asyncio.sleep(0.01)
    assert not queue.barred()  # the head cannot go either: a newcomer that can, may
    free[0] = 1  # capacity frees, nobody notified the head yet
    assert queue.barred()  # it is the head's; asking also woke the head
    async with asyncio.timeout(0.03):  # well before the head's own 50 ms poll
        await head
    assert queue.depth == 0
    assert not queue.barred()


async def test_a_blocked_head_does_not_bar_newcomers() -> None:
    """A head waiting for a limit of its own (its client's rpm) holds up nobody outside the line."""
    queue = WaitQueue()
    head = asyncio.create_task(queue.wait(QueuePolicy(max_waiting=5, timeout=5), lambda: 30.0))
    await asyncio.sleep(0.01)
    assert not queue.barred()
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
