"""Connection pools outlive reloads while used, and close once no table or request needs them."""

from __future__ import annotations

from modelpool.upstream import Transports


async def test_same_endpoint_shares_one_pool_across_reloads() -> None:
    transports = Transports()
    first = transports.get("http://127.0.0.1:9/v1", 8)
    await transports.reconcile([("http://127.0.0.1:9/v1", 8)])
    assert transports.get("http://127.0.0.1:9/v1", 8) is first
    await transports.aclose()


async def test_unused_idle_pool_is_closed_at_once() -> None:
    transports = Transports()
    pool = transports.get("http://127.0.0.1:9/v1", 8)
    await transports.reconcile([])
    assert pool.retired
    assert pool.closed
    assert transports.get("http://127.0.0.1:9/v1", 8) is not pool


async def test_unused_busy_pool_closes_when_its_last_attempt_ends() -> None:
    transports = Transports()
    pool = transports.get("http://127.0.0.1:9/v1", 8)
    pool.active = 2  # two attempts from requests that started on the old table
    await transports.reconcile([])
    assert not pool.closed
    pool.done()
    assert not pool.closed
    pool.done()
    assert pool.closed
