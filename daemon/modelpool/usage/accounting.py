"""Every request priced, recorded and charged to its budgets exactly once.

The dispatcher opens a :class:`Bill` when a request is admitted and closes
it in one place whatever happens (served, failed, cancelled, broken
mid-stream). Closing prices the usage the upstream reported — or, for a
stream cut short, what was seen of it — settles the budget reservation,
counts the metrics and hands one record to the usage store. A bill closes
once; retries and failovers inside the request never reach it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from modelpool.config.spec import Budget, Price
from modelpool.metrics import Metrics
from modelpool.providers.translate.usage import Usage
from modelpool.request import ProxyRequest
from modelpool.table import Pool, RoutingTable
from modelpool.tokens import Estimate
from modelpool.usage.budgets import BudgetBook, Scope
from modelpool.usage.pricing import cost_of, worst_cost
from modelpool.usage.record import ANONYMOUS, NO_MODEL, Outcome, UsageRecord
from modelpool.usage.store import UsageStore


class Settles(Protocol):
    def settle(self, usd: float, tokens: float) -> None: ...


class Book(Protocol):
    """Where budget meters live: this process (BudgetBook) or Redis (SharedBudgetBook)."""

    async def reserve(
        self, scopes: list[tuple[Scope, str, Budget]], usd: float, tokens: float
    ) -> Settles: ...

    def status(self) -> list[dict[str, object]]: ...


DEFAULT_WORST_OUTPUT = 4096
"""Output tokens a reservation assumes when neither the request nor the model caps them."""


@dataclass(slots=True)
class Bill:
    """One request's account, open from admission to the end of its relay."""

    client: str
    pool: str
    started: float
    reservation: Settles | None = None
    """What the request reserved under its budgets (None: it has none)."""
    model: str = NO_MODEL
    """The model that served, once one did."""
    price: Price | None = None
    attempts: int = 0
    closed: bool = False
    outcome: str = ""
    usage: Usage | None = None
    cost: float | None = None
    """Set when the bill closes (what the access log reports)."""

    def served_by(self, model: str, price: Price | None) -> None:
        self.model, self.price = model, price


class Accountant:
    def __init__(
        self,
        store: UsageStore | None,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        book: Book | None = None,
    ) -> None:
        self.store = store
        self.book: Book = book or BudgetBook(store, clock)
        self._metrics = metrics
        self._clock = clock
        self._series: dict[tuple[str, str, str, str], _Series] = {}

    def open(self, request: ProxyRequest, route: Pool) -> Bill:
        client = request.client.name if request.client is not None else ANONYMOUS
        return Bill(client, route.name, self._clock())

    async def admit(
        self, bill: Bill, table: RoutingTable, route: Pool, request: ProxyRequest, guess: Estimate
    ) -> None:
        """Reserve the request's worst case under its client's and pool's budgets.

        Raises BudgetExceeded when one of them is used up for its period.
        """
        budgets: list[tuple[Scope, str, Budget]] = []
        if request.client is not None and not request.client.budget.empty:
            budgets.append(("client", request.client.name, request.client.budget))
        if route.spec is not None and not route.spec.budget.empty:
            budgets.append(("pool", route.name, route.spec.budget))
        if budgets:
            worst = worst_case(table, route, guess, _asked_output(request))
            bill.reservation = await self.book.reserve(budgets, worst, guess.total)

    def close(self, bill: Bill, outcome: Outcome | str, usage: Usage | None) -> None:
        """Price, record and settle; exactly once per bill."""
        if bill.closed:
            return
        bill.closed = True
        usage = usage or Usage()
        cost = cost_of(usage, bill.price) if bill.model != NO_MODEL else 0.0
        bill.outcome, bill.usage, bill.cost = outcome, usage, cost
        if bill.reservation is not None:
            bill.reservation.settle(cost or 0.0, usage.total_tokens)
        self._count(bill, outcome, usage, cost)
        if self.store is not None:
            stored: Outcome = (
                "ok" if outcome == "ok" else "cancelled" if outcome == "cancelled" else "error"
            )
            record = UsageRecord(
                self._clock(), bill.client, bill.pool, bill.model, stored, usage, cost or 0.0,
                cost is not None,
            )  # fmt: skip
            self.store.add(record)

    def _count(self, bill: Bill, outcome: str, usage: Usage, cost: float | None) -> None:
        key = (bill.client, bill.pool, bill.model, outcome)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self._metrics, *key)
        series.requests.inc()
        series.duration.observe(self._clock() - bill.started)
        for child, count in zip(series.tokens, _kinds(usage), strict=True):
            if count:
                child.inc(count)
        if cost is None:
            series.cost_unknown.inc()
        elif cost:
            series.cost.inc(cost)


class _Series:
    """The metric children of one (client, pool, model, outcome), bound once: label
    lookups cost more than the counting. Bounded: every name comes from the config."""

    __slots__ = ("cost", "cost_unknown", "duration", "requests", "tokens")

    def __init__(self, metrics: Metrics, client: str, pool: str, model: str, outcome: str) -> None:
        self.requests = metrics.requests.labels(client, pool, model, outcome)
        self.duration = metrics.request_duration.labels(pool, outcome)
        self.tokens = tuple(metrics.tokens.labels(client, pool, model, kind) for kind in KINDS)
        self.cost = metrics.cost.labels(client, pool, model)
        self.cost_unknown = metrics.cost_unknown.labels(client, pool, model)


KINDS = ("input", "output", "cache_read", "cache_write")


def _kinds(usage: Usage) -> tuple[int, int, int, int]:
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
    )


def _asked_output(request: ProxyRequest) -> int | None:
    body = request.body
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    return asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None


def worst_case(table: RoutingTable, route: Pool, guess: Estimate, asked: int | None) -> float:
    """The most the request can cost on any model of the route or its failover pools.

    Output is what the request asks for at most, else the model's
    ``max_output_tokens``, else DEFAULT_WORST_OUTPUT; the prompt is priced at
    the model's dearest prompt rate (see ``worst_cost``). Unpriced models count 0.
    """
    worst = 0.0
    for pool_name in route.chain:
        for member in table.routes[pool_name].members:
            spec = member.model.spec
            if spec.price is None:
                continue
            output = asked or spec.max_output_tokens or DEFAULT_WORST_OUTPUT
            worst = max(worst, worst_cost(guess.input_tokens, output, spec.price))
    return worst
