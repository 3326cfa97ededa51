"""Budgets kept in Redis: every sidecar reserves from, and settles into, the same meters.

A meter is a hash (spent, reserved) per scope, unit, period and period
start, so a new day or month is simply a new key, and every key expires a
day after its period ends. Reserving checks every meter the request touches
and reserves on all of them in one Lua script: atomic across daemons, so
the admitted total overshoots a cap by at most one reservation per daemon
racing at that instant.

Redis may lose a meter (it restarted empty) or miss settlements (it was
away), so each daemon keeps a :class:`Track` per meter: a *floor* (the most
it read of the meter: the meter holds at least that) and what it owes the
meter (spend settled, reservations given back, that Redis has not taken
yet). The reserve script raises a meter to the floor it is sent and answers
"missing" for a meter that does not exist; the daemon then seeds it (its
floor plus what it owes, or the usage store's spend for the period if that
is more) and reserves again. When the link comes back after an outage every
meter is re-synced (floor plus debt): what was settled meanwhile (on the local fallback,
or by requests that ended during the outage) is added, never lost. A
settlement whose reply was lost is sent again, and so may count twice: the
error is on the side of refusing.

With Redis down, failing open falls back to an in-process book whose caps
are each divided by ``shared_state.replicas``; failing closed refuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from modelpool.config.spec import Budget
from modelpool.shared.link import RedisLink, SharedDown
from modelpool.usage.budgets import (
    BudgetBook,
    Period,
    Reservation,
    Scope,
    Unit,
    caps,
    exceeded,
    period_bounds,
)
from modelpool.usage.store import StoreError, UsageStore

MISSING = 2

RESERVE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {2, i} end
end
local spents = {}
for i = 1, #KEYS do
  local a = 4 * i - 3
  local spent = tonumber(redis.call('HGET', KEYS[i], 'spent') or '0')
  if spent < tonumber(ARGV[a + 3]) then
    spent = tonumber(ARGV[a + 3])
    redis.call('HSET', KEYS[i], 'spent', ARGV[a + 3])
  end
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
  if spent + reserved >= tonumber(ARGV[a]) then return {0, i, string.format('%.17g', spent)} end
  spents[i] = string.format('%.17g', spent)
end
for i = 1, #KEYS do
  redis.call('HINCRBYFLOAT', KEYS[i], 'reserved', ARGV[4 * i - 2])
  redis.call('PEXPIRE', KEYS[i], ARGV[4 * i - 1])
end
return {1, 0, unpack(spents)}
"""
"""ARGV, 4 per meter: cap, amount, TTL (ms), floor. Answers {1, 0, spent...} (reserved),
{0, i, spent} (meter i is used up) or {2, i} (meter i does not exist: seed, then retry)."""

SYNC = """
local out = {}
for i = 1, #KEYS do
  local a = 5 * i - 4
  local spent = tonumber(redis.call('HGET', KEYS[i], 'spent') or '0')
  spent = math.max(spent, tonumber(ARGV[a + 2])) + tonumber(ARGV[a])
  spent = math.max(spent, tonumber(ARGV[a + 3]))
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0') - tonumber(ARGV[a + 1])
  reserved = string.format('%.17g', math.max(0, reserved))
  out[i] = string.format('%.17g', spent)
  redis.call('HSET', KEYS[i], 'spent', out[i], 'reserved', reserved)
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 4])
end
return out
"""
"""Settle, seed and re-sync in one. ARGV, 5 per meter: spend to add, reservation to give
back, floor (raised to, then the spend added), least (the usage store's total, which holds
that spend already), TTL (ms). A vanished meter comes back so, with its TTL."""

DAY_MS = 86_400_000


@dataclasses.dataclass(slots=True, eq=False)
class Track:
    """What this daemon knows of one meter in Redis, and what it owes it."""

    key: str
    scope: Scope
    name: str
    unit: Unit
    period: Period
    start: float
    end: float
    floor: float = 0.0
    """The meter holds at least this: the most this daemon read of it. (Redis restarted
    empty is raised to it; what was settled here and not sent goes on top.)"""
    unsent: float = 0.0
    """Spend settled here that Redis has not added yet."""
    unreleased: float = 0.0
    """Reservations given back here that Redis has not taken off yet."""

    def ttl_ms(self, now: float) -> int:
        return int((self.end - now) * 1000) + DAY_MS

    def seen(self, spent: float) -> None:
        self.floor = max(self.floor, spent)


@dataclasses.dataclass(frozen=True, slots=True)
class Need:
    """One meter a request reserves on: which, under what cap, how much."""

    track: Track
    budget: Budget
    cap: float
    amount: float


class SharedReservation:
    """What one request reserved: in Redis, or (Redis down, failing open) on the local book."""

    def __init__(
        self, book: SharedBudgetBook, needs: list[Need], local: Reservation | None = None
    ) -> None:
        self._book = book
        self._needs = needs
        self._local = local
        self.done = False

    def settle(self, usd: float, tokens: float) -> None:
        if self.done:
            return
        self.done = True
        if self._local is not None:
            self._local.settle(usd, tokens)
        self._book.settled(self._needs, usd, tokens, in_redis=self._local is None)


class SharedBudgetBook:
    def __init__(
        self, link: RedisLink, store: UsageStore | None, clock: Callable[[], float] = time.time
    ) -> None:
        self._link = link
        self._store = store
        self._clock = clock
        self._tracks: dict[str, Track] = {}
        self._owing: dict[str, Track] = {}
        """Tracks with spend or give-backs to send; sent together, once per loop turn."""
        self._flush_due = False
        self._syncing = asyncio.Lock()
        self._local = BudgetBook(store, clock)
        link.on_up(self.resync)

    async def reserve(
        self, scopes: list[tuple[Scope, str, Budget]], usd: float, tokens: float
    ) -> SharedReservation:
        now = self._clock()
        needs = [
            Need(self._track(scope, name, unit, period, now), budget, cap, amount)
            for scope, name, budget in scopes
            for unit, period, cap in caps(budget)
            for amount in (usd if unit == "usd" else float(tokens),)
        ]
        if not self._link.up:
            return await self._reserve_down(scopes, needs, usd, tokens)
        try:
            reply = await self._reserve_in_redis(needs, now)
        except SharedDown:
            return await self._reserve_down(scopes, needs, usd, tokens)
        if not reply[0]:
            need = needs[int(reply[1]) - 1]
            need.track.seen(float(reply[2]))
            track = need.track
            raise exceeded(
                track.scope, track.name, need.budget, track.unit, track.period, need.cap,
                track.end, now,
            )  # fmt: skip
        for need, spent in zip(needs, reply[2:], strict=True):
            need.track.seen(float(spent))
        return SharedReservation(self, needs)

    async def _reserve_in_redis(self, needs: list[Need], now: float) -> list[Any]:
        """The reserve script's reply; a missing meter is seeded and the script run again."""
        for attempt in range(2):
            args = [
                x
                for n in needs
                for x in (repr(n.cap), repr(n.amount), n.track.ttl_ms(now), repr(n.track.floor))
            ]
            reply: list[Any] = await self._link.script(RESERVE, [n.track.key for n in needs], args)
            if reply[0] != MISSING:
                return reply
            if attempt == 0:
                await self._sync([n.track for n in needs], now, ask_store=True)
        raise SharedDown("budget meters vanished from Redis as they were seeded")

    async def _reserve_down(
        self, scopes: list[tuple[Scope, str, Budget]], needs: list[Need], usd: float, tokens: float
    ) -> SharedReservation:
        if not self._link.fail_open:
            raise self._link.unavailable()
        replicas = max(1, self._link.spec.replicas)
        local = [(s, n, _divided(b, replicas)) for s, n, b in scopes]
        return SharedReservation(self, needs, await self._local.reserve(local, usd, tokens))

    def settled(self, needs: Sequence[Need], usd: float, tokens: float, *, in_redis: bool) -> None:
        """Count a request's real cost on its meters' tracks, and send it (with what was
        reserved in Redis, to give back) at the end of this loop turn if Redis is up;
        else on the re-sync when it is back."""
        for need in needs:
            track = need.track
            track.unsent += usd if track.unit == "usd" else float(tokens)
            track.unreleased += need.amount if in_redis else 0.0
            self._owing[track.key] = track
        if self._link.up and not self._flush_due:
            self._flush_due = True
            self._link.soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        if self._link.up and self._owing:
            self._link.spawn(self._sync(None, self._clock(), ask_store=False))

    async def resync(self) -> None:
        """Redis is back: send every current meter what it is owed, and raise it to its
        floor (a Redis that restarted empty gets its meters back). The usage store is not
        asked: it holds this daemon's spend, which floor and debt already cover, and a
        Redis store would be read a month of buckets per meter, on every flap."""
        now = self._clock()
        self._forget_ended(now)
        tracks = list({**self._tracks, **self._owing}.values())
        if tracks:
            await self._sync(tracks, now, ask_store=False)

    async def _sync(self, tracks: list[Track] | None, now: float, *, ask_store: bool) -> None:
        """Run SYNC on ``tracks`` (None: those owed something): floor them, add what they
        owe, and raise them to the usage store's spend when ``ask_store``. What fails stays
        owed, for the next try.

        One SYNC at a time, each sending everything its tracks owe: the store's spend
        includes what is owed, so a SYNC carrying it must never run before one adding
        what is owed (that would count it twice)."""
        async with self._syncing:
            if tracks is None:
                tracks = list(self._owing.values())
            leasts = [await self._stored(track) if ask_store else 0.0 for track in tracks]
            owed = [(track.unsent, track.unreleased) for track in tracks]
            args: list[Any] = []
            for track, least, (unsent, unreleased) in zip(tracks, leasts, owed, strict=True):
                self._owing.pop(track.key, None)
                track.unsent = track.unreleased = 0.0
                args += [repr(unsent), repr(unreleased), repr(track.floor), repr(least)]
                args.append(track.ttl_ms(now))
            if not tracks:
                return
            try:
                spents = await self._link.script(SYNC, [track.key for track in tracks], args)
            except SharedDown:
                for track, (unsent, unreleased) in zip(tracks, owed, strict=True):
                    track.unsent += unsent
                    track.unreleased += unreleased
                    self._owing[track.key] = track
                raise
        for track, spent in zip(tracks, spents, strict=True):
            track.seen(float(spent))

    async def _stored(self, track: Track) -> float:
        """What the usage store says was spent on the track's meter this period."""
        if self._store is None:
            return 0.0
        try:
            totals = await self._store.spent(track.scope, track.name, track.start)
        except StoreError as exc:
            raise SharedDown(str(exc)) from None
        return totals.cost_usd if track.unit == "usd" else float(totals.tokens)

    def _track(self, scope: Scope, name: str, unit: Unit, period: Period, now: float) -> Track:
        start, end = period_bounds(period, now)
        key = self._link.key("budget", scope, name, unit, period, str(int(start)))
        track = self._tracks.get(key)
        if track is None:
            self._forget_ended(now)
            track = self._tracks[key] = Track(key, scope, name, unit, period, start, end)
        return track

    def _forget_ended(self, now: float) -> None:
        for key in [key for key, track in self._tracks.items() if track.end <= now]:
            del self._tracks[key]

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
