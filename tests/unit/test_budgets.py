"""Budget meters: periods, reservations, settlement, and what races cannot do."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

from modelpool.compile import compile_table
from modelpool.config.load import load_config
from modelpool.config.spec import Budget, Price
from modelpool.errors import BudgetExceeded
from modelpool.providers.translate.usage import Usage
from modelpool.state import StateRegistry
from modelpool.tokens import Estimate
from modelpool.upstream import Transports
from modelpool.usage.accounting import worst_case
from modelpool.usage.budgets import BudgetBook, period_bounds
from modelpool.usage.pricing import cost_of
from modelpool.usage.record import Totals
from modelpool.usage.store import Query, Row


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: str) -> None:
        self.now = at(now)

    def __call__(self) -> float:
        return self.now


class SpentStore:
    """A store that knows only what was spent before this process started."""

    def __init__(self, usd: float = 0.0, tokens: int = 0) -> None:
        self.totals = Totals(requests=1, cost_usd=usd, input_tokens=tokens)
        self.asked: list[tuple[str, str, float]] = []

    async def spent(self, scope: Literal["client", "pool"], name: str, since: float) -> Totals:
        self.asked.append((scope, name, since))
        await asyncio.sleep(0)  # a real store answers from another thread
        return self.totals

    async def open(self) -> None: ...
    def add(self, record: object) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...
    async def report(self, query: Query) -> list[Row]:
        return []


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-11-26T15:00:00", "2026-11-26T00:00:00", "2026-11-27T00:00:00"),
        ("day", "2026-12-31T23:59:59", "2026-12-31T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2026-11-26T15:00:00", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
        ("month", "2028-02-29T12:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
        ("month", "2026-12-31T23:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ],
)
def test_periods_are_utc_days_and_calendar_months(
    period: Literal["day", "month"], now: str, start: str, end: str
) -> None:
    assert period_bounds(period, at(now)) == (at(start), at(end))


async def test_a_request_reserves_then_settles_with_its_real_cost() -> None:
    book = BudgetBook(None, Clock("2026-11-26T10:00:00"))
    budget = Budget(usd_per_day=1.0)
    reservation = await book.reserve([("client", "a", budget)], 0.30, 1000)
    [meter] = book.status()
    assert (meter["spent"], meter["reserved"]) == (0.0, 0.30)
    reservation.settle(0.05, 120)
    reservation.settle(0.05, 120)  # exactly once
    [meter] = book.status()
    assert (meter["spent"], meter["reserved"]) == (0.05, 0.0)


async def test_an_exhausted_budget_refuses_with_its_status_and_when_it_resets() -> None:
    clock = Clock("2026-11-26T22:00:00")
    book = BudgetBook(None, clock)
    budget = Budget(usd_per_day=0.10, status=402)
    (await book.reserve([("client", "a", budget)], 0.5, 10)).settle(0.12, 10)
    with pytest.raises(BudgetExceeded) as caught:
        await book.reserve([("client", "a", budget)], 0.01, 10)
    assert caught.value.status == 402
    assert caught.value.retry_after == pytest.approx(2 * 3600)
    assert "resets at 2026-11-27T00:00:00Z" in caught.value.message
    clock.now = at("2026-11-27T00:00:01")  # a new day
    (await book.reserve([("client", "a", budget)], 0.01, 10)).settle(0.01, 10)


async def test_tokens_and_month_caps_and_the_first_exhausted_scope_is_named() -> None:
    book = BudgetBook(None, Clock("2026-11-26T10:00:00"))
    client = Budget(usd_per_month=100.0)
    pool = Budget(tokens_per_day=1000)
    (await book.reserve([("client", "a", client), ("pool", "p", pool)], 0.1, 900)).settle(0.1, 1000)
    with pytest.raises(BudgetExceeded, match="pool 'p' has used its budget of 1000 tokens per day"):
        await book.reserve([("client", "a", client), ("pool", "p", pool)], 0.1, 10)


async def test_fifty_racing_requests_overshoot_by_at_most_one_reservation() -> None:
    book = BudgetBook(SpentStore(usd=0.70), Clock("2026-11-26T10:00:00"))
    budget = Budget(usd_per_day=1.0)
    worst = 0.02  # 50 requests of 0.02 = 1.00, over 3 times the 0.30 left

    async def one() -> bool:
        try:
            reservation = await book.reserve([("client", "a", budget)], worst, 100)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0.001)
        reservation.settle(worst, 100)  # each costs its worst case
        return True

    admitted = sum(await asyncio.gather(*(one() for _ in range(50))))
    [meter] = book.status()
    assert meter["spent"] == pytest.approx(0.70 + admitted * worst)
    assert meter["spent"] <= 1.0 + worst
    assert admitted == 15


async def test_meters_start_from_the_store_once_however_many_requests_race() -> None:
    store = SpentStore(usd=0.25, tokens=40)
    book = BudgetBook(store, Clock("2026-11-26T10:00:00"))
    budget = Budget(usd_per_day=1.0, tokens_per_month=10_000)
    await asyncio.gather(*(book.reserve([("client", "a", budget)], 0.0, 0) for _ in range(10)))
    assert sorted(store.asked) == [
        ("client", "a", at("2026-11-01T00:00:00")),
        ("client", "a", at("2026-11-26T00:00:00")),
    ]
    spent = {(m["unit"], m["period"]): m["spent"] for m in book.status()}
    assert spent == {("usd", "day"): 0.25, ("tokens", "month"): 40.0}


async def test_a_changed_cap_applies_at_once_and_keeps_what_was_spent() -> None:
    book = BudgetBook(None, Clock("2026-11-26T10:00:00"))
    (await book.reserve([("client", "a", Budget(usd_per_day=1.0))], 0.5, 1)).settle(0.5, 1)
    with pytest.raises(BudgetExceeded):  # a reload lowered the cap below what was spent
        await book.reserve([("client", "a", Budget(usd_per_day=0.4))], 0.01, 1)
    await book.reserve([("client", "a", Budget(usd_per_day=2.0))], 0.01, 1)


async def test_a_reservation_from_last_period_does_not_count_in_the_new_one() -> None:
    clock = Clock("2026-11-26T23:59:59")
    book = BudgetBook(None, clock)
    budget = Budget(usd_per_day=1.0)
    reservation = await book.reserve([("client", "a", budget)], 0.5, 1)
    clock.now = at("2026-11-27T00:00:30")
    book.status()  # the meter rolls over
    reservation.settle(0.9, 1)
    [meter] = book.status()
    assert meter["spent"] == 0.0


CACHE_PRICED = """\
version: 1
providers:
  mock: {type: mock}
models:
  m:
    provider: mock
    price: {input_per_mtok: 3, output_per_mtok: 15, cache_read_per_mtok: 0.3,
            cache_write_per_mtok: 3.75}
pools:
  p: {members: [m]}
"""


def test_a_reservation_covers_a_prompt_the_upstream_bills_as_cache_writes(tmp_path: Path) -> None:
    """Cache writes cost more than input: a reservation at the input rate would fall short of
    the bill, and racing requests could overshoot a cap by more than one reservation."""
    path = tmp_path / "pools.yaml"
    path.write_text(textwrap.dedent(CACHE_PRICED))
    table = compile_table(
        load_config(path, env={}), generation=1, registry=StateRegistry(), transports=Transports()
    )
    price = Price(3, 15, cache_read_per_mtok=0.3, cache_write_per_mtok=3.75)
    reserved = worst_case(table, table.routes["p"], Estimate(10_000, 0), asked=100)
    bills = [
        Usage(input_tokens=10_000, output_tokens=100),
        Usage(cache_write_tokens=10_000, output_tokens=100),
        Usage(input_tokens=2_000, cache_read_tokens=4_000, cache_write_tokens=4_000,
              output_tokens=100),
    ]  # fmt: skip
    costs = [cost_of(bill, price) for bill in bills]
    assert all(cost is not None and cost <= reserved + 1e-12 for cost in costs), (costs, reserved)
    assert reserved == pytest.approx(costs[1], abs=1e-12)  # all cache writes: the dearest bill
