"""rpm, tpm and concurrency gates whose counts live in Redis, shared by every sidecar.

All the shared gates a request must pass — a model's, its pool's, its
client's — are checked and counted in ONE Lua script, all or nothing: one
round trip per request, atomic across daemons. What is given back when
requests end (a concurrency slot, the unused part of a tpm reservation) is
queued and sent in one script per event-loop turn, however many requests
ended in it. The leaky buckets mirror the in-process gates exactly (a burst
of up to the limit, then limit/60 per second), on Redis's own clock so every
daemon leaks alike. A concurrency slot is a member of a sorted set scored by
when it expires, so a daemon that dies cannot hold its slots forever.

What a gate answers *locally* (``can_take``, ``retry_in``, ``headroom``) is
its last view of Redis: a hint for ordering and waiting. Only the script
decides; when it refuses, the refusing gate stays closed locally for the
wait it implies, so nobody spins. With Redis down a gate falls back to its
local twin (each limit divided by the expected replicas) when failing open,
or refuses with 503 when failing closed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from modelpool.clock import Clock
from modelpool.limits import Gate, GateRefused, local_gate
from modelpool.shared.link import RedisLink, SharedDown

GATES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_ms = math.floor(now * 1000)
local take = ARGV[1] == 'take'

local function level_of(i, b)
  if ARGV[b] == 'r' then
    local level = tonumber(redis.call('HGET', KEYS[i], 'level') or '0')
    local at = tonumber(redis.call('HGET', KEYS[i], 'at') or tostring(now))
    return math.max(0, level - (now - at) * tonumber(ARGV[b + 2]))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
  return redis.call('ZCARD', KEYS[i])
end

local function apply(i, b, level)
  local ttl = ARGV[b + 5]
  if ARGV[b] == 'r' then
    local amount = tonumber(ARGV[b + 3])
    if take then level = level + amount
    else level = math.max(0, level + tonumber(ARGV[b + 4]) - amount) end
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], ttl)
    return level
  end
  if take then
    redis.call('ZADD', KEYS[i], now_ms + tonumber(ttl), ARGV[b + 4])
    redis.call('PEXPIRE', KEYS[i], ttl)
    return level + 1
  end
  redis.call('ZREM', KEYS[i], ARGV[b + 4])
  return redis.call('ZCARD', KEYS[i])
end

local out = {1, 0}
if take then
  local levels = {}
  for i = 1, #KEYS do
    local b = 2 + (i - 1) * 6
    local level = level_of(i, b)
    local cap = tonumber(ARGV[b + 1])
    local full
    if ARGV[b] == 'r' then
      full = not (level + tonumber(ARGV[b + 3]) <= cap or level == 0)
    else
      full = level >= cap
    end
    if full then return {0, i, tostring(level)} end
    levels[i] = level
  end
  for i = 1, #KEYS do out[#out + 1] = tostring(apply(i, 2 + (i - 1) * 6, levels[i])) end
else
  for i = 1, #KEYS do
    local b = 2 + (i - 1) * 6
    out[#out + 1] = tostring(apply(i, b, level_of(i, b)))
  end
end
return out
"""

RATE_TTL_MS = 120_000
SLOT_TTL_MS = 3_600_000
"""A concurrency slot outlives any request (the longest total timeout is far less): it
is only reclaimed from a daemon that died holding it."""


def scope_key(scope: str) -> str:
    """A stable, short key part for a level's scope (a model identity can be long)."""
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


class SharedGates:
    """The GateFactory of a shared daemon, and the batcher of its gates' Redis work."""

    def __init__(self, link: RedisLink, clock: Clock) -> None:
        self.link = link
        self._clock = clock
        self._gives: list[tuple[str, list[Any]]] = []

    def __call__(self, kind: str, value: int, scope: str) -> Gate:
        if kind == "concurrency":
            return SharedInFlight(kind, value, scope, self, self._clock)
        return SharedRate(kind, value, scope, self, self._clock)

    async def take_many(self, gates: Sequence[Gate], amounts: Sequence[int]) -> None:
        """Take from every shared gate at once (one script), or from none."""
        shared = [g for g in gates if isinstance(g, SharedGate)]
        if not self.link.up:
            return await _take_down_all(shared, amounts)
        keys, args, slots = [], ["take"], []
        for gate, amount in zip(shared, amounts, strict=True):
            slot = uuid.uuid4().hex if isinstance(gate, SharedInFlight) else ""
            keys.append(gate.key)
            args += gate.entry(amount, slot, 0)
            slots.append(slot)
        try:
            reply = await self.link.script(GATES, keys, args)
        except SharedDown:
            return await _take_down_all(shared, amounts)
        if not reply[0]:
            gate = shared[int(reply[1]) - 1]
            gate.level = float(reply[2])
            raise gate.refused(amounts[int(reply[1]) - 1])
        for gate, level, slot in zip(shared, reply[2:], slots, strict=True):
            gate.took(float(level), slot)

    def give(self, key: str, entry: list[Any]) -> None:
        """Queue one give-back; the queue goes to Redis in one script this loop turn."""
        if not self._gives:
            self.link.soon(self._flush_gives)
        self._gives.append((key, entry))

    def _flush_gives(self) -> None:
        gives, self._gives = self._gives, []
        keys = [key for key, _ in gives]
        args: list[Any] = ["give"]
        for _, entry in gives:
            args += entry
        self.link.spawn(self.link.script(GATES, keys, args))


async def _take_down_all(gates: Sequence[SharedGate], amounts: Sequence[int]) -> None:
    taken: list[tuple[SharedGate, int]] = []
    try:
        for gate, amount in zip(gates, amounts, strict=True):
            await gate.take_down(amount)
            taken.append((gate, amount))
    except BaseException:
        for gate, amount in taken:
            gate.give(amount, 0)
        raise


class SharedGate:
    """What the shared gates have in common: the batcher, the fallback, the local view."""

    batch_kind = "r"

    def __init__(self, kind: str, limit: int, scope: str, gates: SharedGates, clock: Clock) -> None:
        self.kind = kind
        self.limit = limit
        self.batch = gates
        self._link = gates.link
        self._clock = clock
        self.key = self._link.key("limit", scope_key(scope), kind)
        local_limit = max(1, limit // max(1, self._link.spec.replicas))
        self._fallback: Gate = local_gate(kind, local_limit, clock)
        self._closed_until = 0.0
        self.level = 0.0
        self._local: deque[int] = deque()
        """Takes that went to the fallback (Redis was down): given back there."""

    def can_take(self, amount: int) -> bool:
        if not self._link.up:
            return self._fallback.can_take(amount) if self._link.fail_open else True
        return self._clock.now() >= self._closed_until

    async def take(self, amount: int) -> None:
        await self.batch.take_many([self], [amount])

    def headroom(self) -> float:
        if not self._link.up and self._link.fail_open:
            return self._fallback.headroom()
        return max(0.0, self.limit - self.level)

    def entry(self, amount: int, slot: str, used: int) -> list[Any]:
        raise NotImplementedError

    def took(self, level: float, slot: str) -> None:
        self.level = level

    def give(self, taken: int, used: int) -> None:
        raise NotImplementedError

    def retry_in(self, amount: int) -> float:
        raise NotImplementedError

    async def take_down(self, amount: int) -> None:
        if not self._link.fail_open:
            raise self._link.unavailable()
        await self._fallback.take(amount)
        self._local.append(amount)

    def refused(self, amount: int) -> GateRefused:
        wait = self.retry_in(amount)
        self._closed_until = self._clock.now() + wait
        return GateRefused(self.kind, wait)


class SharedRate(SharedGate):
    """rpm (amount 1) or tpm (amount = tokens, settled with what was used)."""

    def entry(self, amount: int, slot: str, used: int) -> list[Any]:
        return ["r", self.limit, self.limit / 60.0, amount, used, RATE_TTL_MS]

    def give(self, taken: int, used: int) -> None:
        if self._local:
            self._fallback.give(self._local.popleft(), used)
        elif self.kind == "tpm" and taken != used:
            self.batch.give(self.key, self.entry(taken, "", used))

    def retry_in(self, amount: int) -> float:
        if self.kind == "rpm":
            return 60.0 / self.limit
        excess = self.level + min(amount, self.limit) - self.limit
        return max(60.0 / self.limit, excess * 60.0 / self.limit)


class SharedInFlight(SharedGate):
    """max_concurrency across every daemon."""

    def __init__(self, kind: str, limit: int, scope: str, gates: SharedGates, clock: Clock) -> None:
        super().__init__(kind, limit, scope, gates, clock)
        self._slots: deque[str] = deque()

    def entry(self, amount: int, slot: str, used: int) -> list[Any]:
        return ["s", self.limit, 0, 0, slot, SLOT_TTL_MS]

    def took(self, level: float, slot: str) -> None:
        self.level = level
        self._slots.append(slot)

    def give(self, taken: int, used: int) -> None:
        if self._local:
            self._fallback.give(self._local.popleft(), used)
        elif self._slots:
            slot = self._slots.popleft()
            self.level = max(0.0, self.level - 1)
            self.batch.give(self.key, self.entry(1, slot, 0))

    def retry_in(self, amount: int) -> float:
        return 0.05
