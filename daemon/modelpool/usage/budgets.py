"""Budgets: spend and token caps per client and per pool, per UTC day and month.

Each capped (scope, name, unit, period) has a :class:`Meter` holding what was
spent in the current period and what admitted requests have reserved. A
request is admitted while every meter it touches has room left (spent +
reserved below the cap), and then reserves its worst-case amount on each;
when it ends it settles with what it really cost (a failed or cancelled
request gives back what it did not use). Checks and reservations happen with
no await in between, so they are atomic on the event loop: however many
requests race, the admitted total overshoots a cap by at most the last
reservation.

Meters outlive routing tables (a reload never resets a budget; a changed cap
applies at once) and start from the usage store, so a restart does not
either. Periods roll over at UTC midnight and on the 1st of the month.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from modelpool.config.spec import Budget
from modelpool.errors import BudgetExceeded
from modelpool.usage.store import StoreError, UsageStore

log = logging.getLogger("modelpool.usage")

Scope = Literal["client", "pool"]
Period = Literal["day", "month"]
Unit = Literal["usd", "tokens"]


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """The UTC day or month containing ``now``, as unix (start, end)."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 86400
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(start.year, start.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400


@functools.lru_cache(maxsize=4096)
def caps(budget: Budget) -> tuple[tuple[Unit, Period, float], ...]:
    """Every cap a budget declares (a budget is frozen, so once per budget)."""
    declared: tuple[tuple[Unit, Period, float | None], ...] = (
        ("usd", "day", budget.usd_per_day),
        ("usd", "month", budget.usd_per_month),
        ("tokens", "day", budget.tokens_per_day),
        ("tokens", "month", budget.tokens_per_month),
    )
    return tuple((unit, period, float(cap)) for unit, period, cap in declared if cap is not None)


@dataclass(slots=True)
class Meter:
    period: Period
    start: float
    end: float
    spent: float = 0.0
    reserved: float = 0.0

    def roll(self, now: float) -> None:
        """Start a new period when the current one is over."""
        if now >= self.end:
            self.start, self.end = period_bounds(self.period, now)
            self.spent = 0.0


@dataclass(slots=True)
class Hold:
    """What one request reserved on one meter, in the period it reserved it."""

    meter: Meter
    unit: Unit
    amount: float
    start: float


@dataclass(slots=True)
class Reservation:
    """Everything one request reserved; settled or refunded exactly once."""

    holds: list[Hold] = field(default_factory=list)
    done: bool = False

    def settle(self, usd: float, tokens: float) -> None:
        """Replace the reservations with what the request really used."""
        if self.done:
            return
        self.done = True
        for hold in self.holds:
            meter = hold.meter
            meter.reserved = max(0.0, meter.reserved - hold.amount)
            if meter.start == hold.start:  # a reservation made last period is not carried over
                meter.spent += usd if hold.unit == "usd" else tokens


Key = tuple[Scope, str, Unit, Period]


class BudgetBook:
    """Every meter, created on first use and started from the usage store."""

    def __init__(self, store: UsageStore | None, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._meters: dict[Key, Meter] = {}
        self._loading: dict[Key, asyncio.Future[Meter]] = {}

    async def reserve(
        self, scopes: list[tuple[Scope, str, Budget]], usd: float, tokens: float
    ) -> Reservation:
        """Admit a request of worst-case cost ``usd`` and size ``tokens`` under every budget
        in ``scopes``, or raise BudgetExceeded naming the first exhausted one."""
        wanted = [(s, n, b, u, p, cap) for s, n, b in scopes for u, p, cap in caps(b)]
        known = self._meters
        keys = [(s, n, u, p) for s, n, _, u, p, _ in wanted]
        if all(key in known for key in keys):  # loaded: from here on no await at all
            meters = [known[key] for key in keys]
        else:  # each meter loads from the store once
            meters = [await self._meter(*key) for key in keys]
        now = self._clock()  # no await from here on: check and reserve atomically
        for (scope, name, budget, unit, period, cap), meter in zip(wanted, meters, strict=True):
            meter.roll(now)
            if meter.spent + meter.reserved >= cap:
                raise exceeded(scope, name, budget, unit, period, cap, meter.end, now)
        reservation = Reservation()
        for (_, _, _, unit, _, _), meter in zip(wanted, meters, strict=True):
            amount = usd if unit == "usd" else tokens
            meter.reserved += amount
            reservation.holds.append(Hold(meter, unit, amount, meter.start))
        return reservation

    def status(self) -> list[dict[str, object]]:
        """Every meter now, for /admin/status and /admin/usage."""
        now = self._clock()
        out: list[dict[str, object]] = []
        for (scope, name, unit, period), meter in sorted(self._meters.items()):
            meter.roll(now)
            out.append(
                {
                    "scope": scope,
                    "name": name,
                    "unit": unit,
                    "period": period,
                    "spent": meter.spent,
                    "reserved": meter.reserved,
                    "resets_at": meter.end,
                }
            )
        return out

    async def _meter(self, scope: Scope, name: str, unit: Unit, period: Period) -> Meter:
        key = (scope, name, unit, period)
        meter = self._meters.get(key)
        if meter is not None:
            return meter
        loading = self._loading.get(key)
        if loading is None:  # the first request for this meter loads it; the others wait
            loading = asyncio.ensure_future(self._load(key))
            self._loading[key] = loading
        try:
            return await asyncio.shield(loading)
        finally:
            if loading.done():
                self._loading.pop(key, None)

    async def _load(self, key: Key) -> Meter:
        scope, name, unit, period = key
        start, end = period_bounds(period, self._clock())
        meter = Meter(period, start, end)
        if self._store is not None:
            try:
                totals = await self._store.spent(scope, name, start)
            except StoreError as exc:  # fail open: count from now on
                log.warning("budget starts from zero: usage store unreadable (%s)", exc)
            else:
                meter.spent = totals.cost_usd if unit == "usd" else float(totals.tokens)
        self._meters[key] = meter
        return meter


def exceeded(
    scope: str,
    name: str,
    budget: Budget,
    unit: str,
    period: str,
    cap: float,
    end: float,
    now: float,
) -> BudgetExceeded:
    """The refusal for a used-up budget: which, how much, and when its period resets."""
    amount = f"${cap:g}" if unit == "usd" else f"{cap:g} tokens"
    resets = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = (
        f"{scope} {name!r} has used its budget of {amount} per {period}; "
        f"it resets at {resets} (UTC)"
    )
    return BudgetExceeded(message, status=budget.status, retry_after=end - now)
