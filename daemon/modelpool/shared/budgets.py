"""Budgets kept in Redis: every sidecar reserves from, and settles into, the same meters.

A meter is a hash (spent, reserved) per scope, unit, period and period
start, so a new day or month is simply a new key, and every key expires a
day after its period ends. Reserving checks every meter the request touches
and reserves on all of them in one Lua script: atomic across daemons, so
the admitted total overshoots a cap by at most one reservation per daemon
racing at that instant. A meter is started, once, from the usage store
(what was spent this period before Redis held it).

With Redis down, failing open falls back to an in-process book whose caps
are each divided by ``shared_state.replicas``; failing closed refuses.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from modelpool.config.spec import Budget
from modelpool.shared.link import RedisLink, SharedDown
from modelpool.usage.budgets import BudgetBook, Reservation, Scope, caps, exceeded, period_bounds
from modelpool.usage.store import StoreError, UsageStore

RESERVE = """
for i = 1, #KEYS do
  local spent = tonumber(redis.call('HGET', KEYS[i], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
  if spent + reserved >= tonumber(ARGV[3 * i - 2]) then
    return {0, i, tostring(spent)}
  end
end
for i = 1, #KEYS do
  redis.call('HINCRBYFLOAT', KEYS[i], 'reserved', ARGV[3 * i - 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
end
return {1, 0, '0'}
"""

SEED = """
if redis.call('HSETNX', KEYS[1], 'spent', ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

SETTLE = """
for i = 1, #KEYS do
  local reserved = redis.call('HINCRBYFLOAT', KEYS[i], 'reserved', '-' .. ARGV[2 * i - 1])
  if tonumber(reserved) < 0 then redis.call('HSET', KEYS[i], 'reserved', '0') end
  redis.call('HINCRBYFLOAT', KEYS[i], 'spent', ARGV[2 * i])
end
return 1
"""

DAY_MS = 86_400_000


class SharedReservation:
    def __init__(
        self, book: SharedBudgetBook, keys: list[str], units: list[str], amounts: list[float]
    ) -> None:
        self._book = book
        self._keys = keys
        self._units = units
        self._amounts = amounts
        self.done = False

    def settle(self, usd: float, tokens: float) -> None:
        if self.done:
            return
        self.done = True
        args: list[Any] = []
        for unit, amount in zip(self._units, self._amounts, strict=True):
            args += [repr(amount), repr(usd if unit == "usd" else float(tokens))]
        self._book.settle_soon(self._keys, args)


class SharedBudgetBook:
    def __init__(
        self, link: RedisLink, store: UsageStore | None, clock: Callable[[], float] = time.time
    ) -> None:
        self._link = link
        self._store = store
        self._clock = clock
        self._started: set[str] = set()
        self._local = BudgetBook(store, clock)
        self._settles: tuple[list[str], list[Any]] = ([], [])

    def settle_soon(self, keys: list[str], args: list[Any]) -> None:
        """Queue a settlement; every one queued in this loop turn goes in one script."""
        if not self._settles[0]:
            self._link.soon(self._flush_settles)
        self._settles[0].extend(keys)
        self._settles[1].extend(args)

    def _flush_settles(self) -> None:
        (keys, args), self._settles = self._settles, ([], [])
        self._link.spawn(self._link.script(SETTLE, keys, args))

    async def reserve(
        self, scopes: list[tuple[Scope, str, Budget]], usd: float, tokens: float
    ) -> SharedReservation | Reservation:
        if not self._link.up:
            return await self._reserve_down(scopes, usd, tokens)
        now = self._clock()
        wanted = [(s, n, b, u, p, cap) for s, n, b in scopes for u, p, cap in caps(b)]
        keys: list[str] = []
        args: list[Any] = []
        for scope, name, _, unit, period, cap in wanted:
            start, end = period_bounds(period, now)
            key = self._link.key("budget", scope, name, unit, period, str(int(start)))
            keys.append(key)
            amount = usd if unit == "usd" else float(tokens)
            args += [repr(cap), repr(amount), int((end - now) * 1000) + DAY_MS]
        try:
            await self._start(wanted, keys, args, now)
            ok, index, _ = await self._link.script(RESERVE, keys, args)
        except SharedDown:
            return await self._reserve_down(scopes, usd, tokens)
        if not ok:
            scope, name, budget, unit, period, cap = wanted[int(index) - 1]
            end = period_bounds(period, now)[1]
            raise exceeded(scope, name, budget, unit, period, cap, end, now)
        amounts = [usd if w[3] == "usd" else float(tokens) for w in wanted]
        return SharedReservation(self, keys, [w[3] for w in wanted], amounts)

    async def _reserve_down(
        self, scopes: list[tuple[Scope, str, Budget]], usd: float, tokens: float
    ) -> Reservation:
        if not self._link.fail_open:
            raise self._link.unavailable()
        replicas = max(1, self._link.spec.replicas)
        local = [(s, n, _divided(b, replicas)) for s, n, b in scopes]
        return await self._local.reserve(local, usd, tokens)

    async def _start(self, wanted: list[Any], keys: list[str], args: list[Any], now: float) -> None:
        """Seed each meter this process has not seen from the usage store, unless set."""
        for i, ((scope, name, _, unit, period, _), key) in enumerate(
            zip(wanted, keys, strict=True)
        ):
            if key in self._started:
                continue
            spent = 0.0
            if self._store is not None:
                try:
                    totals = await self._store.spent(scope, name, period_bounds(period, now)[0])
                except StoreError as exc:
                    raise SharedDown(str(exc)) from None
                spent = totals.cost_usd if unit == "usd" else float(totals.tokens)
            await self._link.script(SEED, [key], [repr(spent), args[3 * i + 2]])
            self._started.add(key)

    def status(self) -> list[dict[str, object]]:
        """The local fallback's meters (Redis's are read by /admin/usage, not here)."""
        return self._local.status()


def _divided(budget: Budget, replicas: int) -> Budget:
    def part(cap: float | int | None) -> Any:
        return None if cap is None else type(cap)(cap / replicas)

    return dataclasses.replace(
        budget,
        usd_per_day=part(budget.usd_per_day),
        usd_per_month=part(budget.usd_per_month),
        tokens_per_day=part(budget.tokens_per_day),
        tokens_per_month=part(budget.tokens_per_month),
    )
